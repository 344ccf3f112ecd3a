"""The porter.yaml data model (pydantic): an App with its services and their connections."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from keyless import names


class _Model(BaseModel):
    # Unknown fields are kept (extra="allow") so they can be reported and written back, never dropped.
    model_config = ConfigDict(
        alias_generator=to_camel,
        frozen=True,
        extra="allow",
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )
    # Fields of Porter's porter.yaml that keyless keeps as written and does not use: reported as such, never as
    # unknown (nor suggested to be renamed into a field keyless models). By exact key, and by prefix.
    porter_fields: ClassVar[frozenset[str]] = frozenset()
    porter_field_prefixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def is_porter_field(cls, key: str) -> bool:
        return key in cls.porter_fields or key.startswith(cls.porter_field_prefixes)


def _rule(check: Any, value: str) -> str:
    """Run a naming rule from `keyless.names`, turning its error into a located validation error."""
    try:
        check(value)
    except names.NameRuleError as exc:
        raise PydanticCustomError("keyless", "{message}", {"message": exc.message, "hint": exc.hint}) from exc
    return value


def _env_value(value: Any) -> Any:
    """Environment values are strings; YAML numbers and booleans are written back the way YAML spells them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return ""
    return value


EnvValue = Annotated[str, BeforeValidator(_env_value)]


class EnvFrom(_Model):
    """A value Porter fills in at deploy time (`source: app`: another app's internal or public domain)."""

    source: str | None = None
    name: str | None = None
    value: str | None = None
    service: str | None = None


class EnvVariable(_Model):
    """One entry of `env` in Porter's list form: `- key: NAME` with `value: V`, or with `from:` instead."""

    key: str
    value: EnvValue | None = None
    from_: EnvFrom | None = Field(default=None, alias="from")


# `env` is a mapping (NAME: value) or Porter's list form; which one is decided by the YAML, so an error names the
# form that was written instead of listing both. The tags appear in validation locations, never in the data.
ENV_FORMS = ("mapping", "list")


def _env_form(value: Any) -> str:
    return "list" if isinstance(value, list) else "mapping"


Env = Annotated[
    Annotated[dict[str, EnvValue], Tag("mapping")] | Annotated[list[EnvVariable], Tag("list")],
    Discriminator(_env_form),
]


# --- connections -------------------------------------------------------------------------------


class ConnectionType(enum.StrEnum):
    AWS_ROLE = "awsRole"
    AZURE_MANAGED_IDENTITY = "azureManagedIdentity"
    GCP_SERVICE_ACCOUNT = "gcpServiceAccount"
    CLOUD_SQL = "cloudSql"
    DISK = "disk"


class AwsRoleConnection(_Model):
    """An IAM role for the service's pods, by name (with optional path) or ARN."""

    type: Literal["awsRole"]
    role: str

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        return _rule(names.parse_role, value).strip()

    @property
    def role_ref(self) -> names.RoleRef:
        return names.parse_role(self.role)


class AzureManagedIdentityConnection(_Model):
    """A user-assigned managed identity, by name and resource group."""

    type: Literal["azureManagedIdentity"]
    identity_name: str
    resource_group: str

    @field_validator("identity_name")
    @classmethod
    def _identity(cls, value: str) -> str:
        return _rule(names.check_identity_name, value)

    @field_validator("resource_group")
    @classmethod
    def _group(cls, value: str) -> str:
        return _rule(names.check_resource_group, value)


class GcpServiceAccountConnection(_Model):
    """A Google service account the pods impersonate through Workload Identity Federation."""

    type: Literal["gcpServiceAccount"]
    service_account_email: str

    @field_validator("service_account_email")
    @classmethod
    def _email(cls, value: str) -> str:
        return _rule(names.parse_service_account_email, value)

    @property
    def account(self) -> names.GoogleServiceAccount:
        return names.parse_service_account_email(self.service_account_email)


class CloudSqlConnection(_Model):
    """A Cloud SQL proxy connection: part of the format, not an identity; keyless leaves it to Porter."""

    type: Literal["cloudSql"]
    config: dict[str, Any] = Field(default_factory=dict)


class DiskConnection(_Model):
    """A persistent disk: part of the format, not an identity; keyless leaves it to Porter."""

    type: Literal["disk"]
    config: dict[str, Any] = Field(default_factory=dict)


IdentityConnection = AwsRoleConnection | AzureManagedIdentityConnection | GcpServiceAccountConnection
Connection = Annotated[
    AwsRoleConnection
    | AzureManagedIdentityConnection
    | GcpServiceAccountConnection
    | CloudSqlConnection
    | DiskConnection,
    Field(discriminator="type"),
]

IDENTITY_TYPES = (
    ConnectionType.AWS_ROLE,
    ConnectionType.AZURE_MANAGED_IDENTITY,
    ConnectionType.GCP_SERVICE_ACCOUNT,
)


# --- services ----------------------------------------------------------------------------------


class ServiceType(enum.StrEnum):
    WEB = "web"
    WORKER = "worker"
    JOB = "job"


class Domain(_Model):
    name: str


class Check(_Model):
    """healthCheck, livenessCheck, readinessCheck, startupCheck."""

    enabled: bool | None = None
    http_path: str | None = None
    command: str | None = None
    timeout_seconds: Annotated[int, Field(ge=0)] | None = None
    initial_delay_seconds: Annotated[int, Field(ge=0)] | None = None


class Autoscaling(_Model):
    porter_field_prefixes = ("gpu",)  # GPU thresholds: Porter's autoscaling on GPU use

    enabled: bool | None = None
    min_instances: Annotated[int, Field(ge=0)] | None = None
    max_instances: Annotated[int, Field(ge=0)] | None = None
    cpu_threshold_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    memory_threshold_percent: Annotated[int, Field(ge=0, le=100)] | None = None


class PathRoute(_Model):
    path: str
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    app_name: str | None = None
    service_name: str | None = None


class _Workload(_Model):
    """Fields shared by services, predeploy and initialDeploy."""

    run: str | None = None
    cpu_cores: Annotated[float, Field(gt=0)] | None = None
    ram_megabytes: Annotated[int, Field(gt=0)] | None = None
    gpu_cores_nvidia: Annotated[int, Field(ge=0)] | None = None
    env: Env | None = None
    connections: list[Connection] = Field(default_factory=list)
    node_group: str | None = None
    termination_grace_period_seconds: Annotated[int, Field(ge=0)] | None = None

    @property
    def identity_connections(self) -> list[IdentityConnection]:
        return [
            c for c in self.connections
            if isinstance(c, AwsRoleConnection | AzureManagedIdentityConnection | GcpServiceAccountConnection)
        ]


class Service(_Workload):
    porter_fields = frozenset({"loadBalancers", "sleep", "customAutoscaling", "gpu", "smartOptimization"})

    name: str
    type: ServiceType | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    instances: Annotated[int, Field(ge=0)] | None = None
    private: bool | None = None
    disable_tls: bool | None = Field(default=None, alias="disableTLS")  # Porter's spelling
    load_balancer_config: dict[str, Any] | None = None
    metrics_scraping: dict[str, Any] | None = None
    path_routing_config: dict[str, Any] | None = None
    domains: list[Domain] | None = None
    health_check: Check | None = None
    liveness_check: Check | None = None
    readiness_check: Check | None = None
    startup_check: Check | None = None
    autoscaling: Autoscaling | None = None
    service_mesh_enabled: bool | None = None
    ingress_annotations: dict[str, EnvValue] | None = None
    path_routing: list[PathRoute] | None = None
    cron: str | None = None
    allow_concurrent: bool | None = None
    suspend_cron: bool | None = None
    timeout_seconds: Annotated[int, Field(ge=0)] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _rule(names.check_service_name, value)

    @property
    def kind(self) -> ServiceType:
        """The declared type, else the one Porter gives a service without `type` (the loader warns)."""
        if self.type is not None:
            return self.type
        return porter_service_type(self.name)[0]


# Porter picks the type of a service without `type` from its name, the last of these words found winning, and
# makes it a worker when none is; keyless must agree, or it would patch a workload Porter never made.
_TYPE_WORDS = (("web", ServiceType.WEB), ("wkr", ServiceType.WORKER), ("worker", ServiceType.WORKER),
               ("job", ServiceType.JOB))


def porter_service_type(name: str) -> tuple[ServiceType, str | None]:
    """The type Porter gives a service named `name` that has no `type`, and the word of the name that decided."""
    found: tuple[ServiceType, str | None] = (ServiceType.WORKER, None)
    for word, kind in _TYPE_WORDS:
        if word in name:
            found = (kind, word)
    return found


class Job(_Workload):
    """predeploy and initialDeploy: one-off jobs that run before a deploy."""

    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _rule(names.check_service_name, value)


# Each one-off job by its porter.yaml key, with the name it goes by when it has no `name:` of its own
# (its service account is `<app>-<name>`, like a service's).
JOB_DEFAULT_NAMES: Mapping[str, str] = {"predeploy": "predeploy", "initialDeploy": "initial-deploy"}


# --- the app -----------------------------------------------------------------------------------


class Build(_Model):
    porter_fields = frozenset({"commitSha"})

    method: Literal["docker", "pack"] | None = None
    context: str | None = None
    dockerfile: str | None = None
    builder: str | None = None
    buildpacks: list[str] | None = None


class Image(_Model):
    repository: str | None = None
    tag: str | None = None


class AutoRollback(_Model):
    enabled: bool | None = None


class App(_Model):
    porter_fields = frozenset({"addons", "previews", "requiredApps", "deploymentStrategy"})

    version: Literal["v2"] | None = None
    name: str | None = None
    services: list[Service]
    env: Env | None = None
    env_groups: list[str] | None = None
    build: Build | None = None
    image: Image | None = None
    predeploy: Job | None = None
    initial_deploy: Job | None = None
    auto_rollback: AutoRollback | None = None
    efs_storage: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _rule(names.check_app_name, value)

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)


class AppList(_Model):
    """Porter's multi-app porter.yaml: `apps:`, a list of v2 apps (each loaded as an App), and `addons:`."""

    porter_fields = frozenset({"addons"})

    apps: list[dict[str, Any]] = Field(default_factory=list)


def is_porter_field(model: type[BaseModel], key: str) -> bool:
    """Whether `key` is a Porter field that `model` keeps as written without using it."""
    return issubclass(model, _Model) and model.is_porter_field(key)
