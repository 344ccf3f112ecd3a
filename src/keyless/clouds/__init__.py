"""The cloud registry: one frozen entry per cloud, and the only place that knows the list of clouds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyless.clouds import aws, azure, gcp
from keyless.clouds.aws import AwsRole
from keyless.clouds.azure import AzureIdentity
from keyless.clouds.base import (
    BINDING_ANNOTATION,
    IDENTITY_ANNOTATION,
    PENDING_ANNOTATION,
    Cloud,
    CloudEntry,
    ConnectionField,
    ConnectionPreview,
    PreviewContext,
    PreviewDocument,
)
from keyless.clouds.gcp import GcpIdentity
from keyless.errors import UsageError

__all__ = [
    "BINDING_ANNOTATION",
    "IDENTITY_ANNOTATION",
    "PENDING_ANNOTATION",
    "REGISTRY",
    "AwsRole",
    "AzureIdentity",
    "Cloud",
    "CloudEntry",
    "ConnectionField",
    "ConnectionPreview",
    "GcpIdentity",
    "Identity",
    "PreviewContext",
    "PreviewDocument",
    "all_annotation_keys",
    "by_connection_type",
    "connection_types",
    "entry",
    "for_connection",
    "for_identity",
    "for_target",
    "identity_from_json",
]

REGISTRY: tuple[CloudEntry, ...] = (aws.ENTRY, azure.ENTRY, gcp.ENTRY)

Identity = AwsRole | AzureIdentity | GcpIdentity

_BY_CLOUD: Mapping[Cloud, CloudEntry] = {e.cloud: e for e in REGISTRY}
_BY_CONNECTION_TYPE: Mapping[str, CloudEntry] = {e.connection_type: e for e in REGISTRY}


def entry(cloud: Cloud) -> CloudEntry:
    return _BY_CLOUD[cloud]


def for_target(target: Any) -> CloudEntry:
    """The entry of a target from the targets file (AwsTarget, AzureTarget, GcpTarget)."""
    for item in REGISTRY:
        if isinstance(target, item.target_model):
            return item
    raise TypeError(f"{type(target).__name__} is not a target of a known cloud")


def for_connection(connection: Any) -> CloudEntry | None:
    """The entry of an identity connection of porter.yaml; None for connections that bind no identity (cloudSql)."""
    return next((item for item in REGISTRY if isinstance(connection, item.connection_model)), None)


def for_identity(identity: Identity) -> CloudEntry:
    return next(item for item in REGISTRY if isinstance(identity, item.identity_type))


def by_connection_type(type_: str) -> CloudEntry:
    """The entry of a connection type as porter.yaml spells it; a UsageError naming the identity types otherwise."""
    found = _BY_CONNECTION_TYPE.get(type_)
    if found is None:
        raise UsageError(f"connection type {type_!r} is not an identity connection",
                         f"use one of {', '.join(_BY_CONNECTION_TYPE)}")
    return found


def connection_types() -> tuple[str, ...]:
    return tuple(_BY_CONNECTION_TYPE)


def all_annotation_keys() -> frozenset[str]:
    """Every service-account annotation keyless writes, whatever the cloud."""
    return frozenset().union(*(e.annotation_keys for e in REGISTRY))


def identity_from_json(cloud: Cloud, data: Mapping[str, Any]) -> Identity:
    """An identity value saved by `dataclasses.asdict` (a plan file); TypeError/ValueError when it is not one."""
    made = entry(cloud).identity_type(**{str(k): v for k, v in data.items()})
    assert isinstance(made, AwsRole | AzureIdentity | GcpIdentity)
    return made
