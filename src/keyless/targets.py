"""The targets file: where an app is deployed (cloud, cluster, namespace) and how its Kubernetes side is reached."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from keyless import names
from keyless.diagnostics import START, Diagnostic, Severity, errors_in, sort_diagnostics
from keyless.errors import InvalidInput
from keyless.porter.loader import read_mapping, validate_document
from keyless.porter.model import _rule

DEFAULT_FILE = "keyless.targets.yaml"
ENV_VAR = "KEYLESS_TARGETS"

_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_AWS_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$")
_EKS_CLUSTER = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")
_AKS_CLUSTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,61}[A-Za-z0-9]$|^[A-Za-z0-9]$")
_GKE_CLUSTER = re.compile(r"^[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?$")
_GCP_LOCATION = re.compile(r"^[a-z]+-[a-z]+[0-9]+(-[a-z])?$")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, frozen=True, extra="allow")


def _match(pattern: re.Pattern[str], what: str, hint: str) -> Any:
    def check(value: str) -> None:
        if not pattern.fullmatch(value):
            raise names.NameRuleError(f"{what} {value!r} is not valid", hint)
    return check


class KubernetesMode(enum.StrEnum):
    APPLY = "apply"  # keyless applies service accounts and restarts workloads itself
    RENDER = "render"  # keyless writes manifests for a GitOps tool and touches no cluster


class KubernetesSide(_Model):
    context: str | None = None
    kubeconfig: str | None = None
    mode: KubernetesMode = KubernetesMode.APPLY
    out_dir: str | None = None


class _Target(_Model):
    cluster: str
    namespace: str
    kubernetes: KubernetesSide = Field(default_factory=KubernetesSide)
    # How long a new binding takes to work on this cluster, when it is known better than the cloud's documented
    # worst case (a sandbox, a measured cluster): EKS, the association reaching the agent; Azure, token exchanges
    # that must keep working before pods restart. Unset: the provider's default.
    settle_seconds: float | None = Field(default=None, ge=0, le=3600)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _rule(names.check_namespace, value)

    def file_paths(self) -> dict[str, str]:
        """The paths on the machine running keyless that the target names, by their targets-file spelling."""
        side = self.kubernetes
        return {k: v for k, v in (("kubernetes.kubeconfig", side.kubeconfig), ("kubernetes.outDir", side.out_dir))
                if v is not None}

    def with_file_paths(self, paths: Mapping[str, str]) -> Self:
        """The same target with those paths replaced (the keys of file_paths)."""
        side = self.kubernetes.model_copy(update={
            "kubeconfig": paths.get("kubernetes.kubeconfig", self.kubernetes.kubeconfig),
            "out_dir": paths.get("kubernetes.outDir", self.kubernetes.out_dir)})
        return self.model_copy(update={"kubernetes": side})


class AwsTarget(_Target):
    cloud: Literal["aws"]
    region: str

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return _rule(_match(_AWS_REGION, "AWS region", "a region looks like us-east-1"), value)

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        return _rule(_match(_EKS_CLUSTER, "EKS cluster name",
                            "1-100 letters, digits, '-' or '_', starting with a letter or digit"), value)


class AzureTarget(_Target):
    cloud: Literal["azure"]
    subscription: str
    resource_group: str
    arm_endpoint: str = "https://management.azure.com"
    ca_bundle: str | None = None

    def file_paths(self) -> dict[str, str]:
        return {**super().file_paths(), **({"caBundle": self.ca_bundle} if self.ca_bundle else {})}

    def with_file_paths(self, paths: Mapping[str, str]) -> Self:
        return super().with_file_paths(paths).model_copy(update={"ca_bundle": paths.get("caBundle", self.ca_bundle)})

    @field_validator("subscription")
    @classmethod
    def _subscription(cls, value: str) -> str:
        return _rule(names.check_subscription_id, value)

    @field_validator("resource_group")
    @classmethod
    def _group(cls, value: str) -> str:
        return _rule(names.check_resource_group, value)

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        return _rule(_match(_AKS_CLUSTER, "AKS cluster name",
                            "1-63 letters, digits, '-' or '_', starting and ending with a letter or digit"), value)

    @field_validator("arm_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        https = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/?$")
        return _rule(_match(https, "armEndpoint", "an https:// URL with a host and no path, "
                            "e.g. https://management.usgovcloudapi.net"), value).rstrip("/")


class GcpTarget(_Target):
    cloud: Literal["gcp"]
    project: str
    location: str

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return _rule(names.check_project_id, value)

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        return _rule(_match(_GCP_LOCATION, "GKE location", "a region or zone, e.g. us-central1 or us-central1-a"),
                     value)

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        return _rule(_match(_GKE_CLUSTER, "GKE cluster name",
                            "1-40 lowercase letters, digits and '-', starting with a letter"), value)


Target = Annotated[AwsTarget | AzureTarget | GcpTarget, Field(discriminator="cloud")]
AnyTarget = AwsTarget | AzureTarget | GcpTarget


class TargetsFile(_Model):
    targets: dict[str, Target]


@dataclass(frozen=True)
class Targets:
    file: str
    by_name: Mapping[str, AnyTarget]
    diagnostics: tuple[Diagnostic, ...] = ()

    def get(self, name: str) -> AnyTarget:
        target = self.by_name.get(name)
        if target is None:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise InvalidInput([Diagnostic(Severity.ERROR, self.file, START, f"no target named {name!r}",
                                           f"targets in this file: {known}")])
        return target


def targets_path(explicit: str | None, env: Mapping[str, str]) -> Path:
    """`--targets FILE`, else $KEYLESS_TARGETS, else ./keyless.targets.yaml."""
    return Path(explicit or env.get(ENV_VAR) or DEFAULT_FILE)


def load_targets(data: bytes, file: str, env: Mapping[str, str]) -> Targets:
    doc, out = read_mapping(data, file, "the targets file", "start with `targets:` and one entry per target")
    parsed = validate_document(TargetsFile, doc, env, out)
    raw_targets = doc.value.get("targets")
    if isinstance(raw_targets, dict):
        for name in raw_targets:
            if not _TARGET_NAME.fullmatch(str(name)):
                out.error(doc.key_at(("targets", name)), f"target name {name!r} is not valid",
                          "use letters, digits, '.', '_' and '-' (at most 63)")
        if not raw_targets:
            out.error(doc.value_at(("targets",)), "no targets are defined",
                      "add one, e.g. `prod-eks: {cloud: aws, ...}`")
    if parsed is None or errors_in(out.items):
        raise InvalidInput(sort_diagnostics(out.items))
    return Targets(file=file, by_name=dict(parsed.targets), diagnostics=tuple(sort_diagnostics(out.items)))

